# devenv import-vagrant: evaluate a Vagrantfile against a recording stand-in for Vagrant's
# configuration API and write what it sets as JSON (devenv/vagrantfile/evaluate.py runs this).
#
#   ruby --disable-gems recorder.rb OUT.json /path/to/Vagrantfile
#
# The Vagrantfile really runs (loops, variables, conditionals, YAML files, ENV), but against this
# file's objects, never Vagrant: no provider, no box, no plugin, no network, no .vagrant/. It
# follows Vagrant 2's own loading order and merge rules (plugins/kernel_v2/config/vm.rb):
# `Vagrant.configure` blocks run after the file has loaded, each `config.vm.define` block runs
# per machine on a fresh config merged over the top level, provider blocks run per machine, and
# provisioners, synced folders and networks merge by id as Vagrant merges them.
#
# Unknown settings never crash the evaluation: they are recorded (with the Vagrantfile line) for
# the Devfile's comments. The Vagrantfile's own exceptions are recorded with its file:line. The
# Vagrantfile cannot run `vagrant` from here, and what it writes with Ruby's file API is kept in
# memory: nothing is written into the project. The JSON goes to OUT, never stdout (a
# Vagrantfile may print). Written for Ruby 2.7 and later (the Ruby Vagrant ships, or Debian's).

require "json"
require "stringio"
require "fileutils"
require "pathname"
require "rbconfig"

module DevenvRecorder
  SELF = File.expand_path(__FILE__)
  # Opened before any file API is neutered below.
  OUT_IO = File.open(ARGV[0].to_s, "w")
  VAGRANTFILE = File.expand_path(ARGV[1].to_s)
  RUBY_LIB = RbConfig::CONFIG["rubylibprefix"].to_s
  NOTES = []
  ENV_READS = {}
  PROCS = [] # [config version, block] of every Vagrant.configure / Vagrant::Config.run
  @busy = false
  @seq = 0

  def self.next_id
    @seq += 1
  end

  # The first caller frame in the user's files: the Vagrantfile, or a file it loads.
  def self.location(locations = caller_locations)
    (locations || []).each do |loc|
      path = loc.absolute_path || loc.path
      next if path.nil? || path == SELF || path.start_with?("<internal:")
      next if !RUBY_LIB.empty? && path.start_with?(RUBY_LIB)

      return { "file" => path, "line" => loc.lineno }
    end
    { "file" => VAGRANTFILE, "line" => nil }
  end

  def self.note(kind, text)
    NOTES << { "kind" => kind, "text" => text.to_s }.merge(location)
  end

  def self.env_read(name)
    ENV_READS[name.to_s] = true unless @busy
  end

  def self.quietly
    @busy = true
    yield
  ensure
    @busy = false
  end

  # A command that would run Vagrant (`vagrant plugin install ...` in a plugin check).
  def self.vagrant_command?(args)
    words = args.reject { |a| a.is_a?(Hash) }
    first = words.first
    first = first.first if first.is_a?(Array) # [cmd, argv0]
    return false if first.nil?
    return File.basename(first.to_s) == "vagrant" if words.size > 1

    !!(first.to_s =~ /(\A|[;&|(`\s])vagrant(\s|\z)/)
  end

  def self.command_text(args)
    args.reject { |a| a.is_a?(Hash) }.flatten.map(&:to_s).join(" ")
  end

  def self.write_mode?(mode, kw)
    mode = kw[:mode] || kw["mode"] || mode
    flags = kw[:flags] || 0
    writing = File::WRONLY | File::RDWR | File::CREAT | File::APPEND | File::TRUNC
    return true if mode.is_a?(Integer) && (mode & writing) != 0
    return true if flags.is_a?(Integer) && flags != 0

    mode.is_a?(String) && !!(mode =~ /[wa+]/)
  end

  # JSON-safe plain data: symbols as strings, recorders as what they recorded.
  def self.plain(value, depth = 0)
    return "..." if depth > 40

    case value
    when nil, true, false, Integer then value
    when Float then value.finite? ? value : value.to_s
    when String then text(value)
    when Symbol then text(value.to_s)
    when Array then value.map { |v| plain(v, depth + 1) }
    when Hash then value.each_with_object({}) { |(k, v), h| h[text(k.to_s)] = plain(v, depth + 1) }
    when Range, Pathname then text(value.to_s)
    when Proc, Method then "<code>"
    else
      Namespace === value ? value.__record : text(value.to_s)
    end
  rescue StandardError
    "<value>"
  end

  def self.text(s)
    s = s.dup.force_encoding(Encoding::UTF_8)
    s.valid_encoding? ? s : s.scrub("\uFFFD")
  end

  def self.recorded(settings)
    settings.each_with_object({}) { |(k, v), h| h[k] = v.reject { |kk, _| kk == "real" }.merge("value" => plain(v["value"])) }
  end

  def self.recorded_calls(calls)
    calls.map { |c| c.merge("args" => plain(c["args"])) }
  end

  # ------------------------------------------------------------------------------------------
  # Settings objects. A Namespace records `x.name = value`, answers `x.name` with what was set
  # (nil when unset: Vagrant's UNSET_VALUE is nothing to read), and records every other call.
  class Namespace < BasicObject
    HASH_SETTINGS = %w[vmx].freeze
    # A secret a provider or plugin is given (aws.secret_access_key, do.token, ssh.password) is
    # recorded without its value: import-vagrant's notes name it and never show it.
    SECRET = /password|passwd|passphrase|token|secret|api_key|access_key|private_key\z/i.freeze

    def initialize(kind)
      @__kind = kind
      @__settings = {}
      @__calls = []
      @__children = {}
    end

    def method_missing(name, *args, **kw, &block)
      n = name.to_s
      if n.end_with?("=") && args.size == 1 && kw.empty?
        shown = SECRET.match?(n.chomp("=")) && !args[0].nil? ? "(not shown)" : args[0]
        @__settings[n.chomp("=")] = { "value" => shown, "real" => args[0] }.merge(::DevenvRecorder.location)
        return args[0]
      end
      if args.empty? && kw.empty? && block.nil?
        return @__settings[n]["real"] if @__settings.key?(n)

        if HASH_SETTINGS.include?(n)
          table = {}
          @__settings[n] = { "value" => table, "real" => table }.merge(::DevenvRecorder.location)
          return table
        end
        return __child(n) if __autovivify?

        return nil
      end
      # A block given to an unknown call (a `ruby` trigger, a plugin hook) is code for later:
      # recorded, never run here.
      call = { "name" => n, "args" => args + (kw.empty? ? [] : [kw]), "block" => !block.nil? }
      @__calls << call.merge(::DevenvRecorder.location)
      nil
    end

    def respond_to_missing?(*)
      true
    end

    def respond_to?(*)
      true
    end

    def nil?
      false
    end

    def is_a?(klass)
      [::DevenvRecorder::Namespace, ::BasicObject].include?(klass)
    end

    def kind_of?(klass)
      is_a?(klass)
    end

    def class
      ::DevenvRecorder::Namespace
    end

    def inspect
      "#<vagrant config #{@__kind}>"
    end

    def to_s
      inspect
    end

    def hash
      __id__
    end

    def eql?(other)
      equal?(other)
    end

    def freeze
      self
    end

    def frozen?
      false
    end

    def tap
      yield self
      self
    end

    def __autovivify?
      false
    end

    def __child(name)
      @__children[name] ||= ::DevenvRecorder::PluginNamespace.new(name)
    end

    def __settings
      @__settings
    end

    def __calls
      @__calls
    end

    def __children
      @__children
    end

    # Vagrant's merge of two configs of one kind: the later setting wins, calls add up.
    def __merge!(other)
      other.__settings.each { |k, v| @__settings[k] = v }
      @__calls.concat(other.__calls)
      other.__children.each do |k, v|
        @__children[k] ||= ::DevenvRecorder::PluginNamespace.new(k)
        @__children[k].__merge!(v)
      end
      self
    end

    def __record
      out = {
        "settings" => ::DevenvRecorder.recorded(@__settings),
        "calls" => ::DevenvRecorder.recorded_calls(@__calls),
      }
      unless @__children.empty?
        out["children"] = @__children.each_with_object({}) { |(k, v), h| h[k] = v.__record }
      end
      out
    end
  end

  # config.xyz for a plugin (config.vbguest, config.hostmanager, ...): a namespace of its own.
  class PluginNamespace < Namespace
    def __autovivify?
      true
    end
  end

  class Provisioner
    attr_reader :name, :type, :options, :calls, :at
    attr_accessor :run, :preserve_order

    def initialize(name, type, at)
      @name = name
      @type = type
      @options = {}
      @calls = []
      @at = at
      @run = nil
      @preserve_order = false
    end

    def add_config(options, block)
      options.each { |k, v| @options[k.to_s] = { "value" => v }.merge(@at) }
      return unless block

      current = Namespace.new("provisioner #{@type}")
      block.call(current)
      current.__settings.each { |k, v| @options[k] = v }
      @calls.concat(current.__calls)
    end

    # An override of a named provisioner from a machine's scope: its settings over ours.
    def overridden_by(other)
      copy = other.dup
      copy.instance_variable_set(:@options, @options.merge(other.options))
      copy.instance_variable_set(:@calls, @calls + other.calls)
      copy.run = other.run || @run
      copy
    end

    def record
      {
        "name" => @name && @name.to_s, "type" => @type.to_s, "run" => @run && @run.to_s,
        "options" => DevenvRecorder.recorded(@options), "calls" => DevenvRecorder.recorded_calls(@calls),
      }.merge(@at)
    end
  end

  class VM < Namespace
    V1_NETWORKS = { "hostonly" => "private_network", "bridged" => "public_network" }.freeze

    def initialize
      super("vm")
      @networks = {}   # "TYPE-ID" -> [type, options, at]
      @folders = {}    # id -> options (with "at")
      @provisioners = []
      @providers = {}  # name -> [[block, at]]
      @provider_order = []
      @defined = {}    # name -> {"options" => {}, "procs" => [], "at" => }
      @v1_customize = []
    end

    def __networks
      @networks
    end

    def __folders
      @folders
    end

    def __provisioners
      @provisioners
    end

    def __providers
      @providers
    end

    def __provider_order
      @provider_order
    end

    def __defined
      @defined
    end

    def __v1_customize
      @v1_customize
    end

    def define(name, options = nil, **kw, &block)
      name = name.to_s
      entry = (@defined[name] ||= { "options" => {}, "procs" => [], "at" => ::DevenvRecorder.location })
      (options || {}).merge(kw).each { |k, v| entry["options"][k.to_s] = v }
      entry["procs"] << block if block
      nil
    end

    def provider(name, *_args, **_kw, &block)
      name = name.to_s
      @providers[name] ||= []
      @provider_order << name unless @provider_order.include?(name)
      @providers[name] << [block, ::DevenvRecorder.location] if block
      nil
    end

    def provision(name, options = nil, **kw, &block)
      options = (options.is_a?(::Hash) ? options : {}).merge(kw).transform_keys(&:to_s)
      type = name
      if options.key?("type")
        type = options.delete("type")
      else
        name = nil
      end
      name = options.delete("id") if options.key?("id") && name.nil?
      prov = name && @provisioners.find { |p| p.name.to_s == name.to_s }
      if prov.nil?
        prov = ::DevenvRecorder::Provisioner.new(name && name.to_s, type.to_s, ::DevenvRecorder.location)
        @provisioners << prov
      end
      prov.preserve_order = !!options.delete("preserve_order") if options.key?("preserve_order")
      prov.run = options.delete("run").to_s if options.key?("run")
      prov.add_config(options, block)
      nil
    end

    def network(type, options = nil, **kw)
      type = type.to_s
      options = { "ip" => options } if options.is_a?(::String) # Vagrant 1: network :hostonly, "IP"
      type = V1_NETWORKS.fetch(type, type)
      options = (options.is_a?(::Hash) ? options : {}).merge(kw).transform_keys(&:to_s)
      options["protocol"] ||= "tcp"
      id = options["id"]
      if id.nil?
        id = type == "forwarded_port" ? "#{options["host_ip"]}#{options["protocol"]}#{options["host"]}" : "n#{::DevenvRecorder.next_id}"
      end
      key = "#{type}-#{id}"
      previous = @networks.key?(key) ? @networks[key][1] : {}
      @networks[key] = [type, previous.merge(options), ::DevenvRecorder.location]
      nil
    end

    def synced_folder(hostpath, guestpath = nil, options = nil, **kw)
      if guestpath.is_a?(::Hash)
        options = guestpath
        guestpath = nil
      end
      options = (options || {}).merge(kw).transform_keys(&:to_s)
      if options["nfs"]
        options["type"] = "nfs"
        options.delete("nfs")
      end
      id = options.key?("name") ? options.delete("name").to_s : guestpath.to_s
      options["guestpath"] = guestpath.to_s.sub(%r{/\z}, "") if guestpath
      options["hostpath"] = hostpath.to_s
      options["disabled"] = false unless options.key?("disabled")
      options = (@folders[options["guestpath"]] || {}).merge(options)
      @folders[id] = options.merge("at" => ::DevenvRecorder.location)
      nil
    end

    # Vagrant 1 (Vagrant::Config.run): the calls of the old API, as Vagrant 2 upgrades them.
    def forward_port(guest, host, options = nil, **kw)
      network("forwarded_port", (options || {}).merge(kw).merge("guest" => guest, "host" => host))
    end

    def share_folder(name, guest, host, options = nil, **kw)
      synced_folder(host, guest, (options || {}).merge(kw).merge("name" => name))
    end

    def customize(*args)
      @v1_customize << [args.first, ::DevenvRecorder.location]
      nil
    end

    def host_name=(value)
      method_missing(:hostname=, value)
    end

    def __merge!(other)
      super
      other.__networks.each { |k, v| @networks[k] = v }
      # Provisioners: an override (same name) merges into the earlier one, and keeps the
      # earlier one's place only with preserve_order (Vagrant's rule).
      others = other.__provisioners.dup
      merged = []
      @provisioners.each do |p|
        o = p.name && others.find { |x| x.name == p.name }
        if o
          both = p.overridden_by(o)
          others[others.index(o)] = both
          next unless o.preserve_order

          others.delete(both)
          p = both
        end
        merged << p
      end
      @provisioners = merged + others
      other.__folders.each { |id, opts| @folders[id] = (@folders[id] || {}).merge(opts) }
      other.__providers.each { |k, blocks| (@providers[k] ||= []).concat(blocks) }
      @provider_order = (@provider_order + other.__provider_order).uniq
      @v1_customize.concat(other.__v1_customize)
      other.__defined.each do |name, entry|
        mine = (@defined[name] ||= { "options" => {}, "procs" => [], "at" => entry["at"] })
        mine["options"] = mine["options"].merge(entry["options"])
        mine["procs"] = mine["procs"] + entry["procs"]
      end
      self
    end
  end

  class Trigger
    def initialize
      @triggers = []
    end

    def __triggers
      @triggers
    end

    %w[before after].each do |w|
      define_method(w) do |*commands, **kw, &block|
        opts = kw.transform_keys(&:to_s)
        commands.flatten.select { |c| c.is_a?(Hash) }.each { |h| opts.merge!(h.transform_keys(&:to_s)) }
        commands = commands.flatten.reject { |c| c.is_a?(Hash) }.map(&:to_s)
        settings = Namespace.new("trigger")
        block.call(settings) if block
        @triggers << {
          "when" => w, "commands" => commands, "options" => DevenvRecorder.plain(opts),
          "settings" => settings.__record["settings"],
        }.merge(DevenvRecorder.location)
        nil
      end
    end

    def method_missing(name, *_args, **_kw, &_block)
      DevenvRecorder.note("unsupported", "config.trigger.#{name}")
      nil
    end

    def respond_to_missing?(*)
      true
    end

    def __merge!(other)
      @triggers.concat(other.__triggers)
      self
    end
  end

  # The `config` object a Vagrantfile's block gets. Unknown `config.NAME` are plugin
  # namespaces (config.vbguest, config.hostmanager, ...), recorded as they are set.
  class Config < PluginNamespace
    def initialize
      super("config")
      @vm = ::DevenvRecorder::VM.new
      @ssh = ::DevenvRecorder::Namespace.new("ssh")
      @trigger = ::DevenvRecorder::Trigger.new
    end

    def vm
      @vm
    end

    def ssh
      @ssh
    end

    def trigger
      @trigger
    end

    def __merge!(other)
      super
      @vm.__merge!(other.vm)
      @ssh.__merge!(other.ssh)
      @trigger.__merge!(other.trigger)
      self
    end
  end

  # ------------------------------------------------------------------------------------------
  # Evaluation in Vagrant's order.

  def self.error_record(exc)
    where = location(exc.backtrace_locations)
    message = exc.message.to_s
    if exc.is_a?(SyntaxError) && message =~ /\A(.+?):(\d+): (.*)/m
      where = { "file" => File.expand_path(Regexp.last_match(1)), "line" => Regexp.last_match(2).to_i }
      message = Regexp.last_match(3)
    elsif where["line"].nil?
      (exc.backtrace || []).each do |frame|
        next unless frame =~ /\A(.+?):(\d+)(:|\z)/

        path = File.expand_path(Regexp.last_match(1))
        next if path == SELF || path.start_with?(RUBY_LIB)

        where = { "file" => path, "line" => Regexp.last_match(2).to_i }
        break
      end
    end
    status = exc.is_a?(SystemExit) ? exc.status : nil
    { "class" => exc.class.name.to_s, "message" => text(message), "status" => status }.merge(where)
  end

  def self.run_procs(procs)
    result = Config.new
    procs.each do |block|
      current = Config.new
      block.call(current)
      result.__merge!(current)
    end
    result
  end

  # A provider's blocks (top level, then the machine's) on one provider config; the blocks
  # that take a second argument get a config whose settings override the machine's.
  def self.provider_record(blocks)
    settings = Namespace.new("provider")
    override = nil
    blocks.each do |block, _at|
      current = Namespace.new("provider")
      o = Config.new
      block.call(current, o)
      if block.arity != 1 && block.arity != 0
        override ||= Config.new
        override.__merge!(o)
      end
      settings.__merge!(current)
    end
    first = blocks.first
    [settings.__record.merge(first ? first[1] : {}), override]
  end

  def self.config_record(config)
    vm = config.vm
    providers = {}
    overrides = {}
    vm.__providers.each do |name, blocks|
      rec, override = provider_record(blocks)
      providers[name] = rec
      overrides[name] = override if override
    end
    folders = vm.__folders.map do |id, opts|
      { "id" => id, "options" => plain(opts.reject { |k, _| k == "at" }), "implicit" => false }.merge(opts["at"] || {})
    end
    # Vagrant's finalize: the project folder at /vagrant unless "." is shared or /vagrant named.
    unless vm.__folders.values.any? { |o| o["hostpath"] == "." } || vm.__folders.key?("/vagrant")
      folders << {
        "id" => "/vagrant", "options" => { "hostpath" => ".", "guestpath" => "/vagrant", "disabled" => false },
        "implicit" => true, "file" => VAGRANTFILE, "line" => nil,
      }
    end
    vm_rec = vm.__record.merge(
      "networks" => vm.__networks.values.map { |type, opts, at| { "type" => type, "options" => plain(opts) }.merge(at) },
      "synced_folders" => folders,
      "provisioners" => vm.__provisioners.map(&:record),
      "providers" => providers,
      "provider_order" => vm.__provider_order,
      "v1_customize" => vm.__v1_customize.map { |args, at| { "args" => plain(args) }.merge(at) },
    )
    rec = config.__record
    {
      "vm" => vm_rec,
      "ssh" => config.ssh.__record,
      "triggers" => config.trigger.__triggers,
      "plugins" => rec["children"] || {},
      "calls" => rec["calls"],
      "settings" => rec["settings"],
    }.tap { |r| r["_overrides"] = overrides }
  end

  def self.machine_records(root)
    defined = root.vm.__defined
    if defined.empty?
      defined = { "default" => { "options" => {}, "procs" => [], "at" => nil, "implicit" => true } }
    end
    defined.map do |name, entry|
      sub = run_procs(entry["procs"])
      record = config_record(Config.new.__merge!(root).__merge!(sub))
      overrides = record.delete("_overrides")
      by_provider = {}
      overrides.each do |provider, override|
        with = Config.new.__merge!(root).__merge!(sub).__merge!(override)
        by_provider[provider] = config_record(with).tap { |r| r.delete("_overrides") }
      end
      {
        "name" => name, "implicit" => !!entry["implicit"], "options" => plain(entry["options"]),
        "config" => record, "by_provider" => by_provider,
      }.merge(entry["at"] || {})
    end
  end

  def self.finish(data)
    OUT_IO.write(JSON.generate(data))
    OUT_IO.close
  end
end

module Vagrant
  VERSION = "2.4.1"

  class VagrantError < StandardError; end

  module Errors
    class VagrantError < ::StandardError; end
  end

  def self.configure(version = "2", &block)
    DevenvRecorder::PROCS << [version.to_s, block] if block
    nil
  end

  def self.require_version(*requirements)
    DevenvRecorder.note("require_version", requirements.join(", "))
    nil
  end

  # Vagrantfiles install or demand plugins when this says false (`vagrant plugin install`,
  # `raise`): true lets them go on, and the plugin's settings are recorded for the Devfile.
  def self.has_plugin?(name, *_version)
    DevenvRecorder.note("plugin", name)
    true
  end

  def self.version?(*_requirements)
    true
  end

  def self.source_root
    Pathname.new("/nonexistent/vagrant")
  end

  def self.user_data_path
    Pathname.new(File.join(Dir.home, ".vagrant.d"))
  rescue ArgumentError
    Pathname.new("/nonexistent/.vagrant.d")
  end

  class PluginBase
    def self.method_missing(*_args, **_kw, &_block)
      nil
    end

    def self.respond_to_missing?(*)
      true
    end

    def method_missing(*_args, **_kw, &_block)
      nil
    end

    def respond_to_missing?(*)
      true
    end
  end

  def self.plugin(_version, _component = nil)
    PluginBase
  end

  module Config
    def self.run(&block)
      DevenvRecorder::PROCS << ["1", block] if block
      nil
    end
  end

  module Util
    module Platform
      def self.windows?
        false
      end

      def self.wsl?
        false
      end

      def self.cygwin?
        false
      end

      def self.darwin?
        RbConfig::CONFIG["host_os"].to_s.include?("darwin")
      end

      def self.linux?
        RbConfig::CONFIG["host_os"].to_s.include?("linux")
      end

      def self.platform
        RbConfig::CONFIG["host_os"].to_s
      end
    end

    module Which
      def self.which(cmd)
        (ENV["PATH"] || "").split(File::PATH_SEPARATOR).each do |dir|
          path = File.join(dir, cmd.to_s)
          return path if File.file?(path) && File.executable?(path)
        end
        nil
      end
    end
  end
end

# -- What a Vagrantfile may not do from here: run Vagrant, write files. ---------------------------
module DevenvRecorder
  module EnvSpy
    def [](name)
      DevenvRecorder.env_read(name)
      super
    end

    def fetch(name, *rest, &block)
      DevenvRecorder.env_read(name)
      super
    end

    %i[key? has_key? include? member?].each do |m|
      define_method(m) do |name|
        DevenvRecorder.env_read(name)
        super(name)
      end
    end
  end
  ENV.singleton_class.prepend(EnvSpy)

  module NoVagrant
    private

    def system(*args, **kw)
      if DevenvRecorder.vagrant_command?(args)
        DevenvRecorder.note("vagrant_command", DevenvRecorder.command_text(args))
        return false
      end
      super
    end

    # A Vagrantfile execs only to hand over to Vagrant (`exec "vagrant plugin install ...;
    # vagrant #{ARGV.join(' ')}"`): never here.
    def exec(*args, **_kw)
      DevenvRecorder.note("exec", DevenvRecorder.command_text(args))
      nil
    end

    def spawn(*args, **kw)
      if DevenvRecorder.vagrant_command?(args)
        DevenvRecorder.note("vagrant_command", DevenvRecorder.command_text(args))
        return super("false")
      end
      super
    end

    def `(cmd)
      if DevenvRecorder.vagrant_command?([cmd])
        DevenvRecorder.note("vagrant_command", cmd)
        return ""
      end
      super
    end

    def open(path, *rest, **kw, &block)
      if path.is_a?(String) && path.start_with?("|")
        return super unless DevenvRecorder.vagrant_command?([path[1..]])

        DevenvRecorder.note("vagrant_command", path[1..])
      elsif path.is_a?(String) && DevenvRecorder.write_mode?(rest.first, kw)
        DevenvRecorder.note("write", path)
      else
        return super
      end
      io = StringIO.new
      block ? block.call(io) : io
    end

    # A gem the Vagrantfile requires (a plugin's library) is not there without Vagrant: noted;
    # what the file then does with it fails at its own line.
    def require(name)
      super
    rescue LoadError
      raise if name.to_s.start_with?(".", "/")

      DevenvRecorder.note("require_failed", name.to_s)
      false
    end
  end
  Kernel.prepend(NoVagrant)
  Kernel.singleton_class.prepend(NoVagrant)

  module NoVagrantProcess
    def spawn(*args, **kw)
      if DevenvRecorder.vagrant_command?(args)
        DevenvRecorder.note("vagrant_command", DevenvRecorder.command_text(args))
        return super("false")
      end
      super
    end

    def exec(*args, **_kw)
      DevenvRecorder.note("exec", DevenvRecorder.command_text(args))
      nil
    end
  end
  Process.singleton_class.prepend(NoVagrantProcess)

  module NoPopen
    def popen(*args, **kw, &block)
      cmd = args.find { |a| !a.is_a?(Hash) }
      return super unless DevenvRecorder.vagrant_command?(cmd.is_a?(Array) ? cmd : [cmd])

      DevenvRecorder.note("vagrant_command", Array(cmd).join(" "))
      io = StringIO.new
      block ? block.call(io) : io
    end
  end
  IO.singleton_class.prepend(NoPopen)

  # Files a Vagrantfile writes with Ruby (a generated hosts file, an inventory) are kept in
  # memory: import-vagrant never writes into the project.
  module NoFileWrites
    def open(path, mode = nil, *rest, **kw, &block)
      return super(path, *[mode].compact, *rest, **kw, &block) unless DevenvRecorder.write_mode?(mode, kw)

      DevenvRecorder.note("write", path.to_s)
      io = StringIO.new
      block ? block.call(io) : io
    end

    def new(path, mode = nil, *rest, **kw, &block)
      return super(path, *[mode].compact, *rest, **kw, &block) unless DevenvRecorder.write_mode?(mode, kw)

      DevenvRecorder.note("write", path.to_s)
      StringIO.new
    end

    %i[delete unlink rename symlink link chmod chown lchmod lchown truncate mkfifo utime].each do |m|
      define_method(m) do |*args, **_kw|
        DevenvRecorder.note("write", args.map(&:to_s).join(" "))
        0
      end
    end
  end
  File.singleton_class.prepend(NoFileWrites)

  module NoIoWrites
    %i[write binwrite].each do |m|
      define_method(m) do |path, data = "", *_rest, **_kw|
        DevenvRecorder.note("write", path.to_s)
        data.to_s.bytesize
      end
    end
  end
  IO.singleton_class.prepend(NoIoWrites)

  module NoDirWrites
    %i[mkdir rmdir delete unlink].each do |m|
      define_method(m) do |*args, **_kw|
        DevenvRecorder.note("write", args.first.to_s)
        0
      end
    end
  end
  Dir.singleton_class.prepend(NoDirWrites)

  module NoFileUtils
    %i[mkdir mkdir_p makedirs mkpath rmdir ln link ln_s symlink ln_sf ln_sr cp copy cp_r cp_lr mv move rm
       remove rm_f safe_unlink rm_r rm_rf rmtree touch install chmod chmod_R chown chown_R copy_entry copy_file
       copy_stream remove_entry remove_entry_secure remove_file remove_dir].each do |m|
      define_method(m) do |*args, **_kw|
        DevenvRecorder.note("write", args.flatten.map(&:to_s).join(" "))
        nil
      end
    end
  end
  FileUtils.singleton_class.prepend(NoFileUtils)
end

# -- Run it. --------------------------------------------------------------------------------------
ARGV.clear
$PROGRAM_NAME = "vagrant"
result = { "vagrantfile" => DevenvRecorder::VAGRANTFILE, "machines" => [], "versions" => [] }
begin
  begin
    load DevenvRecorder::VAGRANTFILE
    result["versions"] = DevenvRecorder::PROCS.map(&:first).uniq
    root = DevenvRecorder.run_procs(DevenvRecorder::PROCS.map(&:last))
    result["machines"] = DevenvRecorder.machine_records(root)
    result["root"] = DevenvRecorder.config_record(root).tap { |r| r.delete("_overrides") }
  rescue Exception => e # a Vagrantfile's exit, abort and SyntaxError too
    raise if e.is_a?(Interrupt) || e.is_a?(SignalException)

    result["error"] = DevenvRecorder.error_record(e)
  end
  DevenvRecorder.quietly do
    result["notes"] = DevenvRecorder::NOTES.map { |n| DevenvRecorder.plain(n) }
    result["env"] = DevenvRecorder::ENV_READS.keys.map { |k| DevenvRecorder.text(k) }
  end
  DevenvRecorder.finish(result)
rescue Exception => e # the recorder's own failure: reported, never a Ruby trace on the terminal
  raise if e.is_a?(Interrupt) || e.is_a?(SignalException)

  DevenvRecorder.quietly do
    DevenvRecorder.finish({ "recorder_error" => "#{e.class}: #{e.message}", "backtrace" => (e.backtrace || []).first(5) })
  end
end
exit!(0)
