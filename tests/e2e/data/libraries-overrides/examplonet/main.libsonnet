{ resolved_from: 'override' }
