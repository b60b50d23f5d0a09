"""safetensors I/O: header parsing (pure), byte-range reading, shard layout and output sinks."""
