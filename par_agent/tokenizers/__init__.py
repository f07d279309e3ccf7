from par_agent.tokenizers.actions import Normalizer, get_dataset_stats, set_dataset_stats
from par_agent.tokenizers.frames import FrameTokenizer, build_autoencoder, reconstruction_psnr, train_frame_tokenizer

__all__ = ["Normalizer", "get_dataset_stats", "set_dataset_stats", "FrameTokenizer", "build_autoencoder", "reconstruction_psnr",
           "train_frame_tokenizer"]
