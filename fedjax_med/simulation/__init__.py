"""Federated rounds: sampling, local training, privatizing, aggregating."""

# evaluate
from fedjax_med.simulation.evaluate import build_evaluate as build_evaluate
from fedjax_med.simulation.evaluate import ClientEvaluation as ClientEvaluation

# fedbuff
from fedjax_med.simulation.fedbuff import build_fedbuff as build_fedbuff
from fedjax_med.simulation.fedbuff import FedBuffState as FedBuffState

# participation
from fedjax_med.simulation.participation import Participation as Participation

# round
from fedjax_med.simulation.round import build_round as build_round
from fedjax_med.simulation.round import init_server_state as init_server_state
from fedjax_med.simulation.round import PrivacySettings as PrivacySettings
from fedjax_med.simulation.round import ServerState as ServerState

# sampling
from fedjax_med.simulation.sampling import apply_dropout as apply_dropout
from fedjax_med.simulation.sampling import Cohort as Cohort
from fedjax_med.simulation.sampling import poisson_sampler as poisson_sampler
from fedjax_med.simulation.sampling import uniform_sampler as uniform_sampler
