"""Students: the built-in architectures and featurizers (models), the bundled trainer (train)."""
