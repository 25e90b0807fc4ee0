"""Small trained models shipped with vargen (safetensors + config.json + model card)."""
