"""MLflow: tracking, the registry (pure promotion decision + adapter), pyfunc models, the model catalogue."""
