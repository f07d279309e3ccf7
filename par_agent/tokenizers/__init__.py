"""Frame tokens: the KL autoencoder whose patched latents PAR reads and predicts."""
from par_agent.tokenizers.frames import (FrameTokenizer, background_frame, build_autoencoder, reconstruct,
                                         reconstruction_psnr, resize_frames)

__all__ = ["FrameTokenizer", "background_frame", "build_autoencoder", "reconstruct", "reconstruction_psnr",
           "resize_frames"]
