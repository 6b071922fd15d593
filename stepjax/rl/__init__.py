"""stepjax.rl"""
