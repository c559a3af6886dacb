"""Entry point MLflow loads the registered model from (models-from-code: nothing is unpickled)."""

from mlflow.models import set_model

from lab.registry.packaging import FederatedModel

set_model(FederatedModel())
