"""Clinical metrics of a binary classifier, with bootstrap intervals."""

# clinical
from fedjax_med.evaluation.clinical import accuracy as accuracy
from fedjax_med.evaluation.clinical import auprc as auprc
from fedjax_med.evaluation.clinical import auroc as auroc
from fedjax_med.evaluation.clinical import bootstrap_ci as bootstrap_ci
from fedjax_med.evaluation.clinical import brier_score as brier_score
from fedjax_med.evaluation.clinical import calibration_curve as calibration_curve
from fedjax_med.evaluation.clinical import calibration_intercept as calibration_intercept
from fedjax_med.evaluation.clinical import calibration_slope as calibration_slope
from fedjax_med.evaluation.clinical import clinical_report as clinical_report
from fedjax_med.evaluation.clinical import sensitivity as sensitivity
from fedjax_med.evaluation.clinical import specificity as specificity
