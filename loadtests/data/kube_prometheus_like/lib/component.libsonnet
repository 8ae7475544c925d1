// One component of the kube-prometheus-shaped program: its objects, before lib/mixins.
local k = import 'k.libsonnet';
local dashboards = import 'dashboards.libsonnet';
local rules = import 'rules.libsonnet';

function(params, c) {
  _config:: c,
  serviceAccount: k.serviceAccount(params, c),
  clusterRole: k.clusterRole(params, c),
  clusterRoleBinding: k.clusterRoleBinding(params, c),
  deployment: k.deployment(params, c),
  service: k.service(params, c),
  serviceMonitor: k.serviceMonitor(params, c),
  networkPolicy: k.networkPolicy(params, c),
  podDisruptionBudget: k.podDisruptionBudget(params, c),
  prometheusRule: k.prometheusRule(params, c, rules.groups(params, c)),
  config: k.configMap(params, c, c.name + '-config', {
    'config.yaml': std.manifestYamlDoc({
      global: { scrape_interval: '30s', external_labels: { cluster: 'bench', component: c.name } },
      rule_files: ['/etc/%s/rules/*.yaml' % c.name],
      scrape_configs: [
        { job_name: '%s-%d' % [c.name, i], static_configs: [{ targets: ['%s-%d.%s.svc:%d' % [c.name, i, params.namespace, p.port] for p in c.ports] }] }
        for i in std.range(0, 9)
      ],
    }),
  }),
  dashboard: k.configMap(params, c, 'grafana-dashboard-' + c.name, {
    [c.name + '.json']: std.manifestJsonEx(dashboards.dashboard(params, c), '    '),
  }) + { metadata+: { labels+: { grafana_dashboard: '1' } } },
}
