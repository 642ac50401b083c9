"""Package data: landmark presets and the Multiface crop."""
