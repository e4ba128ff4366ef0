"""hardmine's samplers inside other libraries' detectors (`hardmine.integrations.torchvision`)."""
