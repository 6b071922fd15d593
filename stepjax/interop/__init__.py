"""stepjax.interop"""
