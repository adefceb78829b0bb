"""Federated datasets: containers, bundled data, CSV import and generators."""

# federated
from fedjax_med.data.federated import FederatedData as FederatedData
from fedjax_med.data.federated import FederatedDataset as FederatedDataset
from fedjax_med.data.federated import stack_clients as stack_clients

# heart_disease
from fedjax_med.data.heart_disease import load_heart_disease as load_heart_disease

# images
from fedjax_med.data.images import digits_dataset as digits_dataset
from fedjax_med.data.images import load_digits as load_digits
from fedjax_med.data.images import load_image_folder as load_image_folder
from fedjax_med.data.images import load_npz_sites as load_npz_sites
from fedjax_med.data.images import scan_image_folder as scan_image_folder
from fedjax_med.data.images import synthetic_image_clients as synthetic_image_clients
from fedjax_med.data.images import synthetic_images as synthetic_images

# tabular
from fedjax_med.data.tabular import load_csv as load_csv
from fedjax_med.data.tabular import stratified_split as stratified_split
