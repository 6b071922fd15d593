"""stepjax.evals"""
