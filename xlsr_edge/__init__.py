"""xlsr-edge: export, quantize and run fine-tuned XLS-R / Wav2Vec2 CTC recognizers on edge hardware."""

__version__ = "0.1.0"
