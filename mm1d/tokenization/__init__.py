"""mm1d.tokenization"""
