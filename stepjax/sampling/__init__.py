"""stepjax.sampling"""
