"""stepjax.data"""
