"""stepjax.train"""
