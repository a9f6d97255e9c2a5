"""The release models as an installable data package: ``coinvision.sdk.model_meta.default_models_dir()``."""
