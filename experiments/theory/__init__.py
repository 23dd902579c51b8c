"""Command lines of the GAN-theory experiments (``python -m experiments.theory.<name>``)."""
