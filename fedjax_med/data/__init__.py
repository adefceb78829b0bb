"""Federated datasets: containers, bundled data, CSV import and generators."""

# federated
from fedjax_med.data.federated import FederatedData as FederatedData
from fedjax_med.data.federated import FederatedDataset as FederatedDataset
from fedjax_med.data.federated import stack_clients as stack_clients

# heart_disease
from fedjax_med.data.heart_disease import load_heart_disease as load_heart_disease

# tabular
from fedjax_med.data.tabular import load_csv as load_csv
from fedjax_med.data.tabular import stratified_split as stratified_split
