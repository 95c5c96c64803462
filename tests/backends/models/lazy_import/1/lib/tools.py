def shout(s):
    from .case import upper  # a relative import, run at call time

    return upper(s)
