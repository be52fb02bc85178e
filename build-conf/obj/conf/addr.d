build-conf/obj/conf/addr.o: conf/addr.c conf/internal.h conf/conf.h
conf/internal.h:
conf/conf.h:
