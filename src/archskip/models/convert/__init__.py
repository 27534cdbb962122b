"""Converters for the authors' original (Lightning) checkpoints: ViLT and METER, read with weights_only=True."""
