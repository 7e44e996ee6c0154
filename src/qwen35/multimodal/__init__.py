"""Images and video: media loading, the processor (pixels -> patches), placeholder tokens and mRoPE positions."""
