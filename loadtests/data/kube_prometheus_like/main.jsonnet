// A program shaped like kube-prometheus, for loadtests/bench_engines.py (which
// writes params.libsonnet: component, panel and rule counts). Each component
// yields about eleven Kubernetes objects: RBAC, a Deployment, a Service, a
// ServiceMonitor, a NetworkPolicy, a PodDisruptionBudget, a PrometheusRule,
// a ConfigMap holding a YAML config and one holding a Grafana dashboard as JSON.
// The objects are composed with `+:` overrides applied by std.foldl (lib/mixins).
local params = import 'params.libsonnet';
local component = import 'lib/component.libsonnet';
local mixins = import 'lib/mixins.libsonnet';

local bases = ['alertmanager', 'blackbox-exporter', 'grafana', 'kube-state-metrics',
               'node-exporter', 'prometheus', 'prometheus-operator', 'prometheus-adapter',
               'thanos-sidecar', 'pushgateway', 'loki', 'promtail'];
local configs = [
  {
    local base = bases[i % std.length(bases)],
    local name = if i < std.length(bases) then base else '%s-%d' % [base, std.floor(i / std.length(bases))],
    name: name,
    component: base,
    camelName: std.join('', [std.asciiUpper(w[0]) + w[1:] for w in std.split(name, '-')]),
    metricPrefix: std.strReplace(name, '-', '_'),
    registry: 'quay.io/prometheus',
    version: 'v0.%d.%d' % [40 + i % 20, i % 4],
    replicas: 1 + i % 3,
    proxy: i % 2 == 0,
    ports: [{ name: 'web', port: 9090 + i }] + (if i % 3 == 0 then [{ name: 'reloader', port: 8080 + i }] else []),
    args: { 'web.listen-address': ':%d' % (9090 + i), 'log.level': 'info', 'config.file': '/etc/%s/config.yaml' % name },
    resources: ['pods', 'services', 'endpoints', 'configmaps', 'nodes'][0:2 + i % 4],
    groupBy: ['instance', 'pod', 'namespace', 'code'],
  }
  for i in std.range(0, params.components - 1)
];

local kp = {
  [c.name]: std.foldl(
    function(acc, mixin) acc + mixin,
    [mixins.resources, mixins.securityContext, mixins.antiAffinity]
    + (if c.replicas > 1 then [mixins.highAvailability] else []),
    component(params, c),
  )
  for c in configs
};

// Flattened to one object per manifest file, as kube-prometheus's example.jsonnet does.
std.foldl(
  function(acc, name) acc { ['%s-%s' % [name, part]]: kp[name][part] for part in std.objectFields(kp[name]) },
  std.objectFields(kp),
  {},
)
