from par_agent.tokenizers.actions import Normalizer, get_dataset_stats, set_dataset_stats
from par_agent.tokenizers.frames import (FrameTokenizer, background_frame, build_autoencoder,
                                       reconstruct, reconstruction_psnr, train_frame_tokenizer)

__all__ = ["Normalizer", "get_dataset_stats", "set_dataset_stats", "FrameTokenizer", "background_frame",
           "build_autoencoder", "reconstruct", "reconstruction_psnr", "train_frame_tokenizer"]
