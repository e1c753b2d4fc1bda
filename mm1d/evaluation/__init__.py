"""mm1d.evaluation"""
