"""mdgen: person-conditional generation of micro-Doppler spectrograms (VA-VAE + LightningDiT)."""

__version__ = "0.1.0"
