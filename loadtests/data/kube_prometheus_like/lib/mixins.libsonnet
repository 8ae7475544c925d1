// Overrides applied to every component with `+:`, as kube-prometheus's addons do.
{
  resources: {
    local top = self,
    deployment+: { spec+: { template+: { spec+: {
      containers: std.map(function(ct) ct {
        resources: {
          requests: { cpu: '%dm' % (10 * top._config.replicas), memory: '%dMi' % (32 * top._config.replicas) },
          limits: { cpu: '%dm' % (100 * top._config.replicas), memory: '%dMi' % (128 * top._config.replicas) },
        },
      }, super.containers),
    } } } },
  },
  securityContext: {
    deployment+: { spec+: { template+: { spec+: {
      securityContext: { runAsNonRoot: true, runAsUser: 65534, fsGroup: 65534, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [ct { securityContext+: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } } } for ct in super.containers],
    } } } },
  },
  antiAffinity: {
    local top = self,
    deployment+: { spec+: { template+: { spec+: {
      affinity: { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [{
        weight: 100,
        podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: { 'app.kubernetes.io/name': top._config.name } } },
      }] } },
    } } } },
  },
  highAvailability: {
    local top = self,
    deployment+: { spec+: { replicas: 2 * super.replicas, strategy: { rollingUpdate: { maxUnavailable: 1 } } } },
    podDisruptionBudget+: { spec+: { minAvailable: std.max(1, top.deployment.spec.replicas - 1) } },
  },
}
