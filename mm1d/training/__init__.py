"""mm1d.training"""
