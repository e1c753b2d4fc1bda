"""mm1d.data"""
