WHO = 'lazy'
