local labels(name) = { 'app.kubernetes.io/name': name };
{
  deployment(name, replicas, image):: {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: name, labels: labels(name) },
    spec: {
      replicas: replicas,
      selector: { matchLabels: labels(name) },
      template: {
        metadata: { labels: labels(name) },
        spec: { containers: [{ name: name, image: image }] },
      },
    },
  },
  service(name, port):: {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: name, labels: labels(name) },
    spec: { selector: labels(name), ports: [{ port: port, targetPort: port }] },
  },
}
