WHO = 'helper_a'
