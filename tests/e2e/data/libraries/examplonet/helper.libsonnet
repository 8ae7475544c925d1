{ from: 'default helper' }
