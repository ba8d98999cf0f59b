"""fst/cli"""
