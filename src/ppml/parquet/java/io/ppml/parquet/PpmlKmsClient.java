/*
 * parquet-java's KmsClient over ppml's key path, for Spark's own Parquet reader and writer.
 *
 * Spark's PropertiesDrivenCryptoFactory asks a KmsClient to wrap and unwrap PME key-encryption keys (KEKs)
 * with master keys. This client holds no key and no secret: it starts a ppml key agent
 * (`python -m ppml.parquet.agent`) as its own child process and asks it, over the child's standard input
 * and output. The agent wraps and unwraps through ppml's KeySettings (local key store, Azure Key Vault, a
 * PKCS#11 HSM, or the key broker after attestation), which this client passes on from the Hadoop
 * configuration's `ppml.keys.*` settings; those name secrets only by source (env:VAR, file:PATH), so Spark's
 * configuration, closures, logs and UI never hold a key or a secret.
 *
 * The pipes are anonymous: only this process, which created them, can talk to its agent, so the agent
 * needs no other authentication of its caller and no socket or file exists to connect to. One agent serves
 * every client of this JVM with the same settings; it caches unwrapped keys as ppml does (per process, for
 * as long as their key management service allows). What crosses the pipe: the settings (no secret), master
 * key names, wrapped KEKs, and the plaintext KEK of each wrap and unwrap, which the JVM needs to read and
 * write the files.
 *
 * Wire format, both ways: a frame is a 4-byte big-endian length and that many bytes; a frame holds fields,
 * each a 4-byte big-endian length and its bytes. Requests: [hello, 1, name, value, ...], [wrap, master key,
 * key bytes], [unwrap, master key, wrapped key]. Answers: [ok, value] or [error, code, message].
 */
package io.ppml.parquet;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.hadoop.conf.Configuration;
import org.apache.parquet.crypto.KeyAccessDeniedException;
import org.apache.parquet.crypto.keytools.KmsClient;

public class PpmlKmsClient implements KmsClient {
  /** Hadoop settings with this prefix are ppml KeySettings options (KeySettings.to_options()). */
  public static final String SETTINGS_PREFIX = "ppml.keys.";
  /** The Python interpreter that runs the agent (default: $PYSPARK_PYTHON, else python3). */
  public static final String PYTHON_PROPERTY = "ppml.parquet.agent.python";
  private static final int MAX_FRAME = 16 * 1024 * 1024;
  private static final Map<String, Agent> AGENTS = new HashMap<>();

  private Agent agent;

  @Override
  public void initialize(Configuration configuration, String kmsInstanceID, String kmsInstanceURL,
                         String accessToken) throws KeyAccessDeniedException {
    TreeMap<String, String> settings = new TreeMap<>();
    for (Map.Entry<String, String> entry : configuration) {
      if (entry.getKey().startsWith(SETTINGS_PREFIX)) {
        settings.put(entry.getKey().substring(SETTINGS_PREFIX.length()), entry.getValue());
      }
    }
    String python = configuration.get(PYTHON_PROPERTY);
    if (python == null || python.isEmpty()) {
      python = System.getenv("PYSPARK_PYTHON");
    }
    if (python == null || python.isEmpty()) {
      python = "python3";
    }
    String identity = python + "\u0000" + settings;
    synchronized (AGENTS) {
      Agent found = AGENTS.get(identity);
      if (found == null) {
        found = new Agent(python, settings);
        AGENTS.put(identity, found);
      }
      agent = found;
    }
  }

  @Override
  public String wrapKey(byte[] keyBytes, String masterKeyIdentifier) throws KeyAccessDeniedException {
    return new String(agent.call("wrap", utf8(masterKeyIdentifier), keyBytes), StandardCharsets.UTF_8);
  }

  @Override
  public byte[] unwrapKey(String wrappedKey, String masterKeyIdentifier) throws KeyAccessDeniedException {
    return agent.call("unwrap", utf8(masterKeyIdentifier), utf8(wrappedKey));
  }

  private static byte[] utf8(String text) {
    return text.getBytes(StandardCharsets.UTF_8);
  }

  /** One agent process; calls are serialised (each is a short local exchange). */
  static final class Agent {
    private final String python;
    private final TreeMap<String, String> settings;
    private Process process;
    private DataOutputStream requests;
    private DataInputStream answers;

    Agent(String python, TreeMap<String, String> settings) {
      this.python = python;
      this.settings = settings;
    }

    synchronized byte[] call(String op, byte[]... arguments) throws KeyAccessDeniedException {
      try {
        return exchange(op, arguments);
      } catch (IOException first) {
        stop();  // the agent died (or was never started): start it again, once
        try {
          return exchange(op, arguments);
        } catch (IOException second) {
          stop();
          throw new KeyAccessDeniedException("ppml key agent (" + python + " -m ppml.parquet.agent) failed: "
              + second.getMessage() + "; check that this Python has ppml installed and the executor's stderr");
        }
      }
    }

    private byte[] exchange(String op, byte[]... arguments) throws IOException {
      if (process == null || !process.isAlive()) {
        start();
      }
      List<byte[]> fields = new ArrayList<>();
      fields.add(utf8(op));
      for (byte[] argument : arguments) {
        fields.add(argument);
      }
      List<byte[]> answer = roundTrip(fields);
      String status = new String(answer.get(0), StandardCharsets.UTF_8);
      if ("ok".equals(status) && answer.size() == 2) {
        return answer.get(1);
      }
      if ("error".equals(status) && answer.size() == 3) {
        throw new KeyAccessDeniedException("ppml: " + new String(answer.get(2), StandardCharsets.UTF_8)
            + " [" + new String(answer.get(1), StandardCharsets.UTF_8) + "]");
      }
      throw new IOException("the agent sent a malformed answer");
    }

    private void start() throws IOException {
      ProcessBuilder builder = new ProcessBuilder(python, "-m", "ppml.parquet.agent");
      builder.redirectError(ProcessBuilder.Redirect.INHERIT);
      process = builder.start();
      requests = new DataOutputStream(process.getOutputStream());
      answers = new DataInputStream(process.getInputStream());
      final Process started = process;
      Runtime.getRuntime().addShutdownHook(new Thread(started::destroy));
      List<byte[]> hello = new ArrayList<>();
      hello.add(utf8("hello"));
      hello.add(utf8("1"));
      for (Map.Entry<String, String> entry : settings.entrySet()) {
        hello.add(utf8(entry.getKey()));
        hello.add(utf8(entry.getValue()));
      }
      List<byte[]> answer = roundTrip(hello);
      if (!"ok".equals(new String(answer.get(0), StandardCharsets.UTF_8))) {
        String message = answer.size() == 3 ? new String(answer.get(2), StandardCharsets.UTF_8) : "refused";
        stop();
        throw new KeyAccessDeniedException("ppml: the key agent refused its settings: " + message);
      }
    }

    private List<byte[]> roundTrip(List<byte[]> fields) throws IOException {
      int size = 0;
      for (byte[] field : fields) {
        size += 4 + field.length;
      }
      requests.writeInt(size);
      for (byte[] field : fields) {
        requests.writeInt(field.length);
        requests.write(field);
      }
      requests.flush();
      int length = answers.readInt();
      if (length < 0 || length > MAX_FRAME) {
        throw new IOException("the agent sent a frame of " + length + " bytes");
      }
      byte[] frame = new byte[length];
      answers.readFully(frame);
      List<byte[]> answer = new ArrayList<>();
      int at = 0;
      while (at < length) {
        if (at + 4 > length) {
          throw new IOException("the agent sent a truncated field");
        }
        int fieldLength = ((frame[at] & 0xff) << 24) | ((frame[at + 1] & 0xff) << 16)
            | ((frame[at + 2] & 0xff) << 8) | (frame[at + 3] & 0xff);
        at += 4;
        if (fieldLength < 0 || at + fieldLength > length) {
          throw new IOException("the agent sent a field past its frame");
        }
        byte[] field = new byte[fieldLength];
        System.arraycopy(frame, at, field, 0, fieldLength);
        answer.add(field);
        at += fieldLength;
      }
      if (answer.isEmpty()) {
        throw new IOException("the agent sent an empty frame");
      }
      return answer;
    }

    private void stop() {
      if (process != null) {
        process.destroy();
      }
      process = null;
    }
  }
}
