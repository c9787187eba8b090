"""Weight quantization: packed formats for linear layers behind one QuantMethod protocol."""
