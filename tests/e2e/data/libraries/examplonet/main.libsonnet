{ resolved_from: 'default', helper: import 'helper.libsonnet' }
