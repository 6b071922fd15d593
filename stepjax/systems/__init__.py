"""stepjax.systems"""
