// Kubernetes object constructors, in the style of kube-prometheus's lib.
{
  labels(params, c):: std.mergePatch(params.commonLabels, {
    'app.kubernetes.io/name': c.name,
    'app.kubernetes.io/component': c.component,
    'app.kubernetes.io/version': c.version,
    'app.kubernetes.io/instance': null,
  }),
  selector(c):: {
    'app.kubernetes.io/name': c.name,
    'app.kubernetes.io/component': c.component,
    'app.kubernetes.io/part-of': 'kube-prometheus',
  },
  metadata(params, name, labels, annotations={}):: {
    name: name,
    namespace: params.namespace,
    labels: labels,
    [if std.length(annotations) > 0 then 'annotations']: annotations,
  },
  port(p):: { name: p.name, containerPort: p.port, protocol: 'TCP' },
  container(c):: {
    name: c.name,
    image: '%(registry)s/%(name)s:%(version)s' % c,
    args: ['--%s=%s' % [a, c.args[a]] for a in std.objectFields(c.args)],
    ports: std.map($.port, c.ports),
    readinessProbe: { httpGet: { path: '/-/ready', port: c.ports[0].name }, periodSeconds: 10 },
    livenessProbe: { httpGet: { path: '/-/healthy', port: c.ports[0].name }, failureThreshold: 6 },
    volumeMounts: [{ name: 'config', mountPath: '/etc/%s' % c.name, readOnly: true }],
    env: [{ name: std.asciiUpper(std.strReplace(c.name, '-', '_')) + '_LOG_LEVEL', value: 'info' }],
  },
  kubeRbacProxy(c):: {
    name: 'kube-rbac-proxy',
    image: 'quay.io/brancz/kube-rbac-proxy:v0.18.0',
    args: [
      '--secure-listen-address=:%d' % (c.ports[0].port + 1000),
      '--upstream=http://127.0.0.1:%d/' % c.ports[0].port,
      '--tls-cipher-suites=' + std.join(',', [
        'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256',
        'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256',
        'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384',
        'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384',
      ]),
    ],
    ports: [{ name: 'https', containerPort: c.ports[0].port + 1000 }],
  },
  serviceAccount(params, c):: {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: $.metadata(params, c.name, $.labels(params, c)),
    automountServiceAccountToken: false,
  },
  clusterRole(params, c):: {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRole',
    metadata: $.metadata(params, c.name, $.labels(params, c)) { namespace:: null },
    rules: [
      { apiGroups: [g], resources: c.resources, verbs: ['get', 'list', 'watch'] }
      for g in ['', 'apps', 'batch', 'networking.k8s.io', 'monitoring.coreos.com']
    ],
  },
  clusterRoleBinding(params, c):: {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: $.metadata(params, c.name, $.labels(params, c)) { namespace:: null },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: c.name },
    subjects: [{ kind: 'ServiceAccount', name: c.name, namespace: params.namespace }],
  },
  deployment(params, c):: {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: $.metadata(params, c.name, $.labels(params, c)),
    spec: {
      replicas: c.replicas,
      selector: { matchLabels: $.selector(c) },
      template: {
        metadata: {
          labels: $.labels(params, c),
          annotations: { 'kubectl.kubernetes.io/default-container': c.name },
        },
        spec: {
          serviceAccountName: c.name,
          containers: [$.container(c)] + (if c.proxy then [$.kubeRbacProxy(c)] else []),
          volumes: [{ name: 'config', configMap: { name: c.name + '-config' } }],
          nodeSelector: { 'kubernetes.io/os': 'linux' },
        },
      },
    },
  },
  service(params, c):: {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: $.metadata(params, c.name, $.labels(params, c)),
    spec: {
      ports: [{ name: p.name, port: p.port, targetPort: p.name } for p in c.ports],
      selector: $.selector(c),
    },
  },
  serviceMonitor(params, c):: {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'ServiceMonitor',
    metadata: $.metadata(params, c.name, $.labels(params, c)),
    spec: {
      selector: { matchLabels: $.selector(c) },
      endpoints: [
        {
          port: p.name,
          interval: '30s',
          scheme: if c.proxy then 'https' else 'http',
          bearerTokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token',
          tlsConfig: { insecureSkipVerify: true },
          relabelings: [{
            action: 'replace',
            regex: '(.*)',
            replacement: '$1',
            sourceLabels: ['__meta_kubernetes_pod_node_name'],
            targetLabel: 'instance',
          }],
          metricRelabelings: [
            { action: 'drop', regex: '%s_(%s)' % [std.strReplace(c.name, '-', '_'), m], sourceLabels: ['__name__'] }
            for m in ['debug_.*', 'scrape_.*', 'go_gc_.*']
          ],
        }
        for p in c.ports
      ],
    },
  },
  networkPolicy(params, c):: {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: $.metadata(params, c.name, $.labels(params, c)),
    spec: {
      podSelector: { matchLabels: $.selector(c) },
      policyTypes: ['Egress', 'Ingress'],
      egress: [{}],
      ingress: [{
        from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'prometheus' } } }],
        ports: [{ port: p.port, protocol: 'TCP' } for p in c.ports],
      }],
    },
  },
  podDisruptionBudget(params, c):: {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: $.metadata(params, c.name, $.labels(params, c)),
    spec: { minAvailable: 1, selector: { matchLabels: $.selector(c) } },
  },
  configMap(params, c, name, data):: {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: $.metadata(params, name, $.labels(params, c)),
    data: data,
  },
  prometheusRule(params, c, groups):: {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PrometheusRule',
    metadata: $.metadata(params, c.name + '-rules', $.labels(params, c) { prometheus: 'k8s', role: 'alert-rules' }),
    spec: { groups: groups },
  },
}
