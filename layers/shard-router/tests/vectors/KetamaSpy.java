// Prints the node spymemcached's KetamaNodeLocator picks for each key, for the server sets of
// the cases file (args[0]): unweighted (the locator KetamaConnectionFactory builds by default)
// and weighted (a weights map with every node's weight; SPYMEMCACHED node keys). Output lines as
// the C program's: "<flavour> <config> <digits>", and "hash ketama_hash <key> <u32>".
// (The LIBMEMCACHED node-key format is left out: it reverse-resolves each address, so its
// output depends on the machine's resolver.)
import java.lang.reflect.Proxy;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import net.spy.memcached.DefaultHashAlgorithm;
import net.spy.memcached.KetamaNodeKeyFormatter;
import net.spy.memcached.KetamaNodeLocator;
import net.spy.memcached.MemcachedNode;

public class KetamaSpy {
  static MemcachedNode node(InetSocketAddress addr) {
    return (MemcachedNode) Proxy.newProxyInstance(
        KetamaSpy.class.getClassLoader(),
        new Class<?>[] {MemcachedNode.class},
        (proxy, method, args) -> {
          switch (method.getName()) {
            case "getSocketAddress": return addr;
            case "toString": return "node " + addr;
            case "hashCode": return System.identityHashCode(proxy);
            case "equals": return proxy == args[0];
            default: throw new UnsupportedOperationException(method.getName());
          }
        });
  }

  public static void main(String[] args) throws Exception {
    Map<String, List<String[]>> configs = new LinkedHashMap<>();
    List<String> keys = new ArrayList<>();
    for (String line : Files.readAllLines(Paths.get(args[0]), StandardCharsets.UTF_8)) {
      String[] tok = line.trim().split(" +");
      if (tok[0].equals("config")) {
        List<String[]> servers = new ArrayList<>();
        for (int i = 2; i < tok.length; i++) servers.add(tok[i].split("[:=]"));
        configs.put(tok[1], servers);
      } else if (tok[0].equals("keys")) {
        for (int i = 1; i < tok.length; i++) keys.add(tok[i]);
      }
    }
    for (int i = 0; i < 500; i++) keys.add("key-" + i);
    for (String flavour : new String[] {"spymemcached", "spymemcached_weighted"}) {
      for (Map.Entry<String, List<String[]>> c : configs.entrySet()) {
        List<MemcachedNode> nodes = new ArrayList<>();
        Map<InetSocketAddress, Integer> weights = new HashMap<>();
        for (String[] s : c.getValue()) {
          InetSocketAddress addr = new InetSocketAddress(s[0], Integer.parseInt(s[1]));
          nodes.add(node(addr));
          weights.put(addr, Integer.parseInt(s[2]));
        }
        KetamaNodeLocator locator;
        if (flavour.equals("spymemcached")) {
          locator = new KetamaNodeLocator(nodes, DefaultHashAlgorithm.KETAMA_HASH);
        } else {
          locator = new KetamaNodeLocator(nodes, DefaultHashAlgorithm.KETAMA_HASH,
              KetamaNodeKeyFormatter.Format.SPYMEMCACHED, weights);
        }
        StringBuilder out = new StringBuilder(flavour + " " + c.getKey() + " ");
        for (String k : keys) out.append(Character.forDigit(nodes.indexOf(locator.getPrimary(k)), 36));
        System.out.println(out);
      }
    }
    for (int i = 0; i < keys.size() - 500; i++) {
      System.out.println("hash ketama_hash " + keys.get(i) + " " + DefaultHashAlgorithm.KETAMA_HASH.hash(keys.get(i)));
    }
  }
}
