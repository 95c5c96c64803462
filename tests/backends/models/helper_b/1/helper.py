WHO = 'helper_b'
