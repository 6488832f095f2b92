"""The file MLflow runs to build the pyfunc model when it loads a logged bundle (MLflow's models from code:
nothing is pickled, so a model loads under any later slidemil that still has :class:`BundlePyfunc`)."""

import mlflow.models

from slidemil.mlflow_model import BundlePyfunc

mlflow.models.set_model(BundlePyfunc())
