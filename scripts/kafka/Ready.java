// Answers whether a Kafka broker serves metadata: exits 0 once a describeCluster request on the
// bootstrap address names at least one broker and a controller, 1 otherwise. Run by
// scripts/services with the broker's own classpath: `java -cp 'lib/*' Ready.java HOST:PORT`.

import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;

public class Ready {
    public static void main(String[] args) {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "3000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "5000");
        try (Admin admin = Admin.create(props)) {
            DescribeClusterResult cluster = admin.describeCluster();
            int brokers = cluster.nodes().get(5, TimeUnit.SECONDS).size();
            boolean controller = cluster.controller().get(5, TimeUnit.SECONDS) != null;
            String id = cluster.clusterId().get(5, TimeUnit.SECONDS);
            if (brokers > 0 && controller) {
                System.out.println("cluster " + id + ", " + brokers + " broker(s)");
                return;
            }
            System.err.println("no broker in the metadata yet");
        } catch (Exception e) {
            System.err.println("metadata request failed: " + e.getMessage());
        }
        System.exit(1);
    }
}
