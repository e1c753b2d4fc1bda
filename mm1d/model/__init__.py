"""mm1d.model"""
