"""Server-side optimizers that apply the round's aggregate update.

Each optimizer takes the pseudo-gradient g = -Delta, where Delta is the
aggregate client update (new minus old weights). Plain FedAvg is
`optax.sgd(1.0)`.
"""

# optimizers
from fedjax_med.server.optimizers import fed_adagrad as fed_adagrad
from fedjax_med.server.optimizers import fed_adam as fed_adam
from fedjax_med.server.optimizers import fed_avg_m as fed_avg_m
from fedjax_med.server.optimizers import fed_yogi as fed_yogi
from fedjax_med.server.optimizers import FedAdaptiveState as FedAdaptiveState
from fedjax_med.server.optimizers import scale_by_fed_adagrad as scale_by_fed_adagrad
from fedjax_med.server.optimizers import scale_by_fed_adam as scale_by_fed_adam
from fedjax_med.server.optimizers import scale_by_fed_yogi as scale_by_fed_yogi
