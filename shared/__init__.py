"""Code shared by the API and the workers. The ASR engine lives in :mod:`shared.asr`."""
