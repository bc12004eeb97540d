"""Built-in metrics, each a streaming torchmetrics state fed by the harness's shared pass."""
