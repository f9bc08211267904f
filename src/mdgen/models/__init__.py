"""Neural networks of mdgen: the VA-VAE autoencoder (`mdgen.models.vavae`) and the LightningDiT generator.

Modules are imported by their full path (`from mdgen.models.vavae import VAVAE`); this package
imports nothing itself, so `import mdgen.models` stays cheap.
"""
